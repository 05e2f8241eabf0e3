"""doc_to_visual of the local tasks: a document names its video as `sample:NAME.mp4` or `generated:NAME`."""
from prunevid.evaluation import clips


def doc_to_visual(doc):
    return [str(clips.resolve(doc["video"]))]


def image_doc_to_visual(doc):
    return [clips.middle_frame(doc["image"])]
