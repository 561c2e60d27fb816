"""One module per `llama-chat` sub-command, each with `add_arguments(parser)` and `run(args)`."""
