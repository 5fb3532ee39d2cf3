"""Provisioner backends behind one narrow interface (base.Backend): local processes, Kubernetes."""
