"""The daemon: listeners and admission (:mod:`.app`), the protocol-neutral session core
(:mod:`.session`), and one adapter per wire protocol (:mod:`.protocols`)."""
