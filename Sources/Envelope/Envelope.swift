import Crypto
import _CryptoExtras
import COpenSSL
