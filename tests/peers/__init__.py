"""Real protocol peers (snmpd, netconfd+sshd, sshd, etcd, promtool) as pytest fixtures."""
