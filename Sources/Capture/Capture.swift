import CX11
import CPNG
