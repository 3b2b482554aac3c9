from ndvq.cli import entry_point

entry_point()
