"""The Textual chat TUI: `ChatApp` and its widgets, history store and chat templates."""
