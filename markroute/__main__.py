from markroute.cli import main

main()
