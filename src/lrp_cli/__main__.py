from lrp_cli.cli import main

main()
