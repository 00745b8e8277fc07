from services.classification.settings import ClassificationSettings
from shared.lifecycle import main
from shared.worker import InferenceWorker


class ClassificationWorker(InferenceWorker):
    name = "classification"


main(ClassificationWorker, ClassificationSettings)
