"""One module per wire protocol, translation only (uvicorn's ``protocols/``): each defines an
:class:`~streamd.server.protocols.base.Adapter` between its clients' messages and the session core."""
