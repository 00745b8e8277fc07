from services.detection.settings import DetectionSettings
from shared.lifecycle import main
from shared.worker import InferenceWorker


class DetectionWorker(InferenceWorker):
    name = "detection"


main(DetectionWorker, DetectionSettings)
