"""How to make each kind of device trust the gateway's local CA."""

from __future__ import annotations

from pathlib import Path

_NSS_NICKNAME = "Local AI Gateway CA"


def trust_instructions(ca_cert: Path) -> str:
    """Exact, copy-and-paste steps to trust ``ca_cert`` on each OS, with its real path."""
    path = str(ca_cert.resolve())
    quoted = f'"{path}"'
    return f"""\
Trust the gateway's certificate authority {path} on every device that opens the gateway
(it can only certify this gateway's own names and networks):

macOS (Terminal):
  sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {quoted}

Windows (Command Prompt or PowerShell run as Administrator):
  certutil -addstore -f ROOT {quoted}
  without Administrator, for your account only: certutil -user -addstore -f ROOT {quoted}
  or double-click the file > Install Certificate > Local Machine >
  Place all certificates in: Trusted Root Certification Authorities

Linux, Debian/Ubuntu:
  sudo cp {quoted} /usr/local/share/ca-certificates/local-ai-gateway.crt
  sudo update-ca-certificates
Linux, Fedora/RHEL/Arch:
  sudo trust anchor --store {quoted}
Linux, Chrome/Chromium and Firefox keep their own NSS store (certutil is in libnss3-tools
or nss-tools):
  certutil -d sql:$HOME/.pki/nssdb -A -t "C,," -n "{_NSS_NICKNAME}" -i {quoted}
  Firefox (any OS): Settings > Privacy & Security > Certificates > View Certificates >
  Authorities > Import, then tick "Trust this CA to identify websites"

iOS/iPadOS:
  1. AirDrop or mail {ca_cert.name} to the device and open it ("Profile Downloaded").
  2. Settings > General > VPN & Device Management > the profile > Install.
  3. Settings > General > About > Certificate Trust Settings > turn on full trust for it.

Android:
  Copy {ca_cert.name} to the device (rename it to .crt if the picker greys it out), then
  Settings > Security > Encryption & credentials > Install a certificate > CA certificate.
  Chrome trusts it; Firefox needs Settings > About Firefox (tap the logo 5 times) >
  Secret Settings > Use third party CA certificates.

Restart the browser afterwards.
"""
