"""LopSo media: forwards a lecturer's RTP packets to many viewers, with no codec on the path.

media/ knows nothing of sites, roles, tokens or Redis; server/ drives it through this API:

    engine = MediaEngine(MediaConfig(host="0.0.0.0", port=8189, announce=["192.0.2.10"]))
    await engine.start()                      # binds the one UDP socket of this process
    lecture = engine.lecture("class-42", video_codec="VP8")   # get or create
    answer, publisher = await lecture.publish(offer_sdp)      # WHIP; replaces a live publisher
    answer, viewer = await lecture.subscribe(offer_sdp)       # WHEP; works before the lecturer is live
    viewer.stats()         # -> ViewerStats (packets/bytes sent, loss, jitter, rtt, nacks, plis)
    viewer.on_close = cb   # called once when the viewer's transport dies or is closed
    lecture.on_live = cb   # called with True/False when a publisher starts/stops sending
    await viewer.close(); await publisher.close(); await lecture.close(); await engine.close()

Errors: media.errors (SdpError, CodecMismatchError, LectureClosedError, ...).
"""
