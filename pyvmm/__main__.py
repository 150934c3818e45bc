from pyvmm.cli import main

main()
