from rewards.alignment.server import main

main()
