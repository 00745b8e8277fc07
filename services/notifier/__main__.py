from services.notifier.service import NotifierService
from services.notifier.settings import NotifierSettings
from shared.lifecycle import main

main(NotifierService, NotifierSettings)
