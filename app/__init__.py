"""llama-chat's front ends: the command line and the Textual chat TUI."""
