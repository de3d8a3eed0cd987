"""totpd: a TOTP second factor for Linux logins.

The daemon (`totpd`) alone holds every account's secret and decides, behind a Unix
socket, whether a code is good; `totpctl` and the PAM module only ever talk to it.
"""

__version__ = "0.1.0"
