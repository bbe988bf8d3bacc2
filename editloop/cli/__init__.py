"""The command line: the one place allowed to reach into services/, annotation/ and trainers/."""
