from services.api.service import ApiService
from services.api.settings import ApiSettings
from shared.lifecycle import main

main(ApiService, ApiSettings)
