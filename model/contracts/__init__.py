"""The contracts between the trainer (``model/``) and the service (``service/``): the only
modules of ``model/`` the service imports.
"""
