from services.reader.service import ReaderService
from services.reader.settings import ReaderSettings
from shared.lifecycle import main

main(ReaderService, ReaderSettings)
