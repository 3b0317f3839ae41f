"""
Scale-out on Redis: several txvoice nodes behind a load balancer acting as one service.

One idea per module: the settings a ``--redis`` URL names (:mod:`.settings`), the connection
service (:mod:`.connection`), and one Redis implementation per existing interface -- the session
registry (:mod:`.registry`), session tokens (:mod:`.tokens`), resume state and the reliable-message
log (:mod:`.resume`), conversations (:mod:`.conversations`), the event bus (:mod:`.bus`), the
offline queue (:mod:`.offline`).  :mod:`.install` puts them into a server.  Without ``--redis``
none of this is loaded and the in-process stores stay.
"""
