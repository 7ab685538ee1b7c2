"""The private aiortc internals media/ relies on are all still there (fails loudly if not)."""

import pytest
from aiortc import RTCPeerConnection

from media import hooks


async def test_every_hook_is_present():
    hooks.check_hooks()


async def test_missing_hook_is_named(monkeypatch):
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    monkeypatch.delattr(RTCRtpReceiver, "_send_rtcp_pli")
    with pytest.raises(hooks.HookError, match="_send_rtcp_pli"):
        hooks.check_hooks()


def test_other_aiortc_version_refused(monkeypatch):
    monkeypatch.setattr(hooks.aiortc, "__version__", "9.9.9")
    with pytest.raises(hooks.HookError, match="9.9.9"):
        hooks.check_hooks()


async def test_widened_dtls_accepts_rsa_suites():
    pc = RTCPeerConnection()
    hooks.widen_dtls(pc)
    certificate = pc._RTCPeerConnection__certificates[0]
    from aiortc.rtcdtlstransport import SRTP_PROFILES
    from OpenSSL import SSL

    ctx = certificate._create_ssl_context(srtp_profiles=SRTP_PROFILES)
    names = SSL.Connection(ctx).get_cipher_list()
    assert "ECDHE-RSA-AES128-GCM-SHA256" in names and "ECDHE-ECDSA-AES128-GCM-SHA256" in names
