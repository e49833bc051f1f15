import Hummingbird
import HummingbirdTLS
import NIOSSL
import GRDB
import Logging
