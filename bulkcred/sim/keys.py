"""SSH private key checks: PEM (PKCS#8, PKCS#1, SEC1) or OpenSSH, RSA at most 2048 bits."""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = ["MAX_RSA_BITS", "KeyProblem", "check_private_key"]

MAX_RSA_BITS = 2048


class KeyProblem(ValueError):
    """Why a key is refused; ``error_id`` is the ZPA-style error id to answer with."""

    def __init__(self, error_id: str, reason: str) -> None:
        super().__init__(reason)
        self.error_id = error_id
        self.reason = reason


def _load(data: bytes, password: bytes | None) -> object:
    if b"BEGIN OPENSSH PRIVATE KEY" in data:
        return serialization.load_ssh_private_key(data, password)
    # The sim only needs to know the key parses; skipping RSA's slow consistency
    # check keeps a rotation of thousands of keys cheap.
    return serialization.load_pem_private_key(data, password, unsafe_skip_rsa_key_validation=True)


def check_private_key(pem: str, passphrase: str | None) -> None:
    """Raise KeyProblem unless ``pem`` is a usable SSH private key for ZPA."""
    data = pem.encode()
    if b"-----BEGIN" not in data or b"PRIVATE KEY-----" not in data:
        raise KeyProblem("invalid.ssh.key", "privateKey is not a PEM or OpenSSH private key")
    password = passphrase.encode() if passphrase else None
    try:
        key = _load(data, password)
    except TypeError:
        if password is None:
            raise KeyProblem(
                "invalid.ssh.key", "privateKey is encrypted and no passphrase was given"
            ) from None
        # A passphrase sent with an unencrypted key is harmless: accept the key.
        return check_private_key(pem, None)
    except UnsupportedAlgorithm:
        # Encrypted OpenSSH keys need the optional bcrypt module to decrypt; without
        # it the passphrase cannot be verified, so a key that has one is accepted.
        if password is not None and b"BEGIN OPENSSH PRIVATE KEY" in data:
            return None
        raise KeyProblem("invalid.ssh.key", "privateKey uses an unsupported algorithm") from None
    except ValueError as exc:
        wrong = password is not None and "password" in str(exc).lower()
        reason = "passphrase does not decrypt privateKey" if wrong else "privateKey does not parse"
        raise KeyProblem("invalid.ssh.key", reason) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size > MAX_RSA_BITS:
            raise KeyProblem(
                "ssh.key.too.large",
                f"RSA keys must be {MAX_RSA_BITS} bits or smaller, not {key.key_size}",
            )
    elif not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise KeyProblem("invalid.ssh.key", "privateKey must be an RSA, EC or Ed25519 key")
    return None
