from lrp_cli.cli import main

if __name__ == "__main__":  # worker processes (Dask's spawn) import this module again: they must not run lrp
    main()
