def preload(parser):
    parser.add_argument("--test-ext-greeting", default="hello", help="a flag added by the test extension")
