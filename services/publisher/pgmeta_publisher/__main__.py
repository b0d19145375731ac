from pgmeta_publisher.app import main

main()
