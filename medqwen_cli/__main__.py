from medqwen_cli.cli.app import main

main()
