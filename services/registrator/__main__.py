from services.registrator.service import RegistratorService
from services.registrator.settings import RegistratorSettings
from shared.lifecycle import main

main(RegistratorService, RegistratorSettings)
