"""Word lists for synthetic inputs: filler vocabulary, needle keys, and the Inventory item vocabulary."""

FILLER_WORDS = tuple(
    """
the of and to in is was for on that with as by at from it his her an be this which or are had not
but were have they one you all their there been has when who will more no if out so said what up
its about into than them can only other new some could time these two may then do first any my now
such like our over man me even most made after also did many before must through back years where
much your way well down should because each just those people how too little state good very make
world still own see men work long get here between both life being under never day same another know
while last might us great old year off come since against go came right used take three states
himself few house use during without again place around however home small found thought went say
part once general high upon school every does got united left number course war until always away
something fact though water less public put think almost hand enough far took head yet government
system better set told nothing night end why called did find going look asked later point knew city
next program business give group toward young days let room president side social given present
several order national possible rather second face per among form important often things looked
early white case john become large big need four within felt along children saw best church ever
least power development light thing seemed family interest want members mind country area others done
turned although open god service certain kind problem began different door thus help sense means
whole matter perhaps itself york times law human line above name example action company hands local
show whether five history gave today either act feet across taken past quite anything seen having
death week experience body word half really field am car words already themselves information tell
together college shall money period held keep sure real probably free seems political cannot behind
miss question air office making brought whose special heard major problems ago became federal moment
study available known result street economic boy position reason change south board individual job
society areas west close turn love community true court force full seem am policy everything plan
""".split()
)

KEY_ADJECTIVES = tuple(
    """
amber silver golden crimson quiet rapid hidden frozen ancient bright distant gentle hollow iron lunar
marble northern polar rustic scarlet shadow solar stone velvet violet wild winter wooden azure coral
""".split()
)
KEY_NOUNS = tuple(
    """
falcon harbor lantern meadow orchard river summit tower valley willow badger beacon canyon cedar comet
delta ember fjord glacier heron island jaguar kestrel lotus maple nebula otter pine quartz raven
""".split()
)
PERSON_NAMES = tuple(
    """
Alice Bruno Clara Dmitri Elena Farid Greta Hiro Ingrid Jonas Kavya Lars Mira Nadia Oscar Priya Quentin
Rosa Stefan Tariq Ursula Viktor Wanda Xavier Yara Zane
""".split()
)
INVENTORY_ITEMS = tuple(
    """
sword shield potion amulet scroll dagger helmet gauntlet lantern rope torch bow arrow quiver staff wand
ring cloak boots map compass key chalice crown gem orb tome rune elixir flask
""".split()
)

# Key shapes beyond adjective-noun (pipeline/tasks/generators.py KEY_SHAPES). None of these words is a
# filler word, so a key's words appear in a haystack only where a needle puts them.
SURNAMES = tuple(
    """
Marsh Vance Lind Okafor Brandt Castillo Dunmore Ekstrom Fairley Galvan Hollis Ivers Jessup Kowal Lindqvist
Moreau Nakamura Orsini Pereira Quill Rainsford Sorensen Thackeray Umber Varga Whitlock
""".split()
)
CITY_NAMES = tuple(
    """
Lisbon Oslo Nairobi Quito Hanoi Tbilisi Dakar Bergen Porto Valletta Tallinn Cusco Krakow Mombasa Zagreb
Bilbao Perth Reykjavik Malmo Tangier Lyon Ghent Sapporo Kazan Tromso Arequipa Durban Seville Rotterdam
""".split()
)
OBJECT_MATERIALS = tuple("copper brass bronze porcelain cobalt jade pewter obsidian ivory walnut".split())
OBJECT_NOUNS = tuple(
    """
kettle compass teapot locket telescope hourglass sextant inkwell lantern-clock gramophone typewriter
chessboard music-box candlestick thimble spyglass
""".split()
)
CODE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I or O: they read as digits
