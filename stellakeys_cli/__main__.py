from stellakeys_cli.main import main

main()
