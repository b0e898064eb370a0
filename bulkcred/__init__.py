"""bulkcred: async bulk jobs for the privileged credentials of a ZPA tenant."""

__version__ = "0.1.0"
