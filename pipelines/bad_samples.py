"""Why a sample or shard was skipped. Every skip is counted under one of these reasons."""

TRUNCATED_TAR = "truncated_tar"  # the tar ends mid-member; samples before it are kept
CORRUPT_TAR = "corrupt_tar"  # unreadable headers; reading resumes at the next good header
UNREADABLE_SHARD = "unreadable_shard"  # the file could not be opened or read at all
PARSE_ERROR = "parse_error"  # the reader met input no rule foresaw; the shard stops there, earlier samples kept
PICKLE_MEMBER = "pickle_member"  # .pyd/.pickle/.pth/... members are never unpickled
MISSING_IMAGE = "missing_image"
MISSING_CAPTION = "missing_caption"
EMPTY_CAPTION = "empty_caption"
BAD_METADATA = "bad_metadata"  # the .json member is not JSON, or its label is not an int64
BAD_CONVERSATION = "bad_conversation"  # "conversations" is not a list of {from, value} string turns
IMAGE_PLACEHOLDERS = "image_placeholders"  # a conversation whose <image> placeholders do not match its images
IMAGE_NUMBERING = "image_numbering"  # numbered images (0.jpg, 1.jpg, ...) with a gap, or beside an unnumbered one
TOO_MANY_IMAGES = "too_many_images"  # VLM: more images than data.max_images_per_sample
DUPLICATE_MEMBER = "duplicate_member"  # two members of one sample with the same extension
MEMBERS_NOT_ADJACENT = "members_not_adjacent"  # a key seen earlier in the shard: a sample's members must be adjacent
BAD_HEADER = "bad_header"  # a header whose fields cannot be read (size not a number, absurd size)
EMPTY_SHARD = "empty_shard"  # a valid tar with no samples (empty, or only directories)
NOT_AN_IMAGE = "not_an_image"  # bytes PIL cannot identify or decode
OVERSIZED_IMAGE = "oversized_image"  # width x height over the max-pixels guard (from the header)
OVERSIZED_MEMBER = "oversized_member"  # a tar member too large to load into memory safely
NO_SUPERVISED_TOKENS = "no_supervised_tokens"  # VLM: truncation left no assistant token to learn
IMAGE_TRUNCATED = "image_truncated"  # VLM: max_length cuts into the image's tokens
UNREADABLE_FILE = "unreadable_file"  # an image file of a folder source that could not be read
CAPTION_TOO_LONG = "caption_too_long"  # a caption over data.max_caption_bytes (tokenizers read it whole)
METADATA_TOO_LARGE = "metadata_too_large"  # a .json member over data.max_metadata_bytes
TOO_MANY_TURNS = "too_many_turns"  # a conversation over data.max_conversation_turns
OUTSIDE_SOURCE = "outside_source"  # convert: a path or link that leads out of the source (or --image-root)
UNREADABLE_CAPTION = "unreadable_caption"  # convert: a caption file that is not UTF-8 text

ALL = (
    TRUNCATED_TAR,
    CORRUPT_TAR,
    UNREADABLE_SHARD,
    PICKLE_MEMBER,
    MISSING_IMAGE,
    MISSING_CAPTION,
    EMPTY_CAPTION,
    BAD_METADATA,
    NOT_AN_IMAGE,
    OVERSIZED_IMAGE,
    OVERSIZED_MEMBER,
    NO_SUPERVISED_TOKENS,
    IMAGE_TRUNCATED,
    BAD_CONVERSATION,
    IMAGE_PLACEHOLDERS,
    IMAGE_NUMBERING,
    TOO_MANY_IMAGES,
    DUPLICATE_MEMBER,
    MEMBERS_NOT_ADJACENT,
    BAD_HEADER,
    EMPTY_SHARD,
    PARSE_ERROR,
    UNREADABLE_FILE,
    CAPTION_TOO_LONG,
    METADATA_TOO_LARGE,
    TOO_MANY_TURNS,
    OUTSIDE_SOURCE,
    UNREADABLE_CAPTION,
)

# Events about a shard rather than about one sample; they do not count as samples.
SHARD_LEVEL = frozenset({TRUNCATED_TAR, CORRUPT_TAR, UNREADABLE_SHARD, BAD_HEADER, EMPTY_SHARD, PARSE_ERROR})


class TooManyBadSamples(ValueError):
    """The bad fraction passed the configured threshold."""
