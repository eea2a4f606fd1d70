"""Special tokens and the text formats that place images in a prompt."""

IMAGE_TOKEN = "<image>"  # marks where an image sits in the text
END_OF_CHUNK = "<|endofchunk|>"  # closes the text that belongs to one image
SPECIAL_TOKENS = (IMAGE_TOKEN, END_OF_CHUNK)
