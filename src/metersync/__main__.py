from metersync.cli import main

main()
