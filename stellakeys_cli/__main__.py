from stellakeys_cli.process import run

run()
