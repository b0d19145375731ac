from pgmeta_orchestrator.app import main

main()
