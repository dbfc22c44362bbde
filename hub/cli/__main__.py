from edgehub.hub.cli import main

main()
