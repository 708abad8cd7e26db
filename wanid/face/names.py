"""Face-parser names that the node, Setup Check and the workflow generator share. Plain Python (no torch): the
headless CLI imports it."""

PARSER_FILE = "parsing_bisenet.pth"  # facexlib's BiSeNet, what Stand-In uses
# Face Crop / Parse's parser_model choices besides the files:
AUTO_PARSER = "auto"  # PARSER_FILE (else another parser file) when installed, else none: a workflow runs either way
NO_PARSER = "none (fallback)"
