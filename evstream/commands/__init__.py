"""One module per `evstream` subcommand: HELP, EXAMPLES, configure(parser), main(args)."""
