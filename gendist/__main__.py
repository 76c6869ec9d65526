from gendist.cli import entry_point

entry_point()
