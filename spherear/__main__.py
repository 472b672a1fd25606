from spherear.cli import main

main()
