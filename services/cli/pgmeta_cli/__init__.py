"""`pgmeta`: the command line for requesting extractions and watching runs."""
