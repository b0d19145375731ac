from pgmeta_transformer.app import main

main()
