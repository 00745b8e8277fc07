from services.router.service import RouterService
from services.router.settings import RouterSettings
from shared.lifecycle import main

main(RouterService, RouterSettings)
