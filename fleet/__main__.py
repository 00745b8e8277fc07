from fleet.run import main

main()
