"""Building blocks with no knowledge of codecs."""
