from pgmeta_extractor.app import main

main()
