"""Protocol numbers from RFC 2131, RFC 2132, RFC 3046 and RFC 3527."""

from enum import IntEnum

SERVER_PORT = 67
CLIENT_PORT = 68

# RFC 2131 section 3: the four octets that open the options field.
MAGIC_COOKIE = b"\x63\x82\x53\x63"
# RFC 2131 section 2: op, htype ... file; the options start after the cookie.
FIXED_HEADER_LEN = 236
OPTIONS_OFFSET = FIXED_HEADER_LEN + len(MAGIC_COOKIE)
# RFC 1542 section 3.4 / BOOTP: some clients drop replies shorter than this.
MIN_BOOTP_LEN = 300
# RFC 2131 section 2: every DHCP participant must accept a 576-octet IP datagram.
MIN_IP_DATAGRAM = 576
IP_UDP_HEADERS = 28
BROADCAST_FLAG = 0x8000
# ARP's hardware type and address length for Ethernet (RFC 1700): every link served.
HTYPE_ETHERNET = 1
ETHERNET_HLEN = 6


class Op(IntEnum):
    BOOTREQUEST = 1
    BOOTREPLY = 2


class MessageType(IntEnum):
    """Option 53 values (RFC 2132 section 9.6)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class OptionCode(IntEnum):
    PAD = 0
    SUBNET_MASK = 1
    TIME_OFFSET = 2
    ROUTERS = 3
    DNS_SERVERS = 6
    HOST_NAME = 12
    DOMAIN_NAME = 15
    INTERFACE_MTU = 26
    BROADCAST_ADDRESS = 28
    NTP_SERVERS = 42
    VENDOR_SPECIFIC = 43
    REQUESTED_ADDRESS = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_REQUEST_LIST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS_ID = 60
    CLIENT_ID = 61
    RAPID_COMMIT = 80
    CLIENT_FQDN = 81
    RELAY_AGENT_INFO = 82
    SUBNET_SELECTION = 118
    DOMAIN_SEARCH = 119
    CLASSLESS_STATIC_ROUTE = 121
    END = 255


class Overload(IntEnum):
    """Option 52 values (RFC 2132 section 9.3)."""

    FILE = 1
    SNAME = 2
    BOTH = 3


class RelayAgentSubOption(IntEnum):
    """Option 82 sub-options (RFC 3046, RFC 3527 link selection, RFC 3993, RFC 5010)."""

    CIRCUIT_ID = 1
    REMOTE_ID = 2
    LINK_SELECTION = 5
    SUBSCRIBER_ID = 6
    SERVER_ID_OVERRIDE = 11
    RELAY_AGENT_FLAGS = 10
