"""Literals that the data layer and the model layer must agree on, defined once.

A leaf module (it imports nothing) so that `data` and `models`, which never import each other,
can both use it: the templates write `IMAGE_TOKEN` into conversations as the image placeholder,
and the model builder adds the same string to the tokenizer as the single image token id that
`LlavaForConditionalGeneration` scatters image features into.
"""

IMAGE_TOKEN = "<image>"
